#Requires -Version 7.0
# The help: Get-Help <cmdlet> -Full for every exported cmdlet (from the MAML the build generates out of docs/help/*.md),
# about_BastionTools with every ErrorId, and every example's code run against the sandbox as it is written.
BeforeDiscovery {
    Import-Module (Join-Path $PSScriptRoot 'TestHelpers.psm1') -Force
    Import-Module (Get-TestModulePath) -Force
    $script:Cmdlets = @((Import-PowerShellDataFile (Get-TestModulePath)).CmdletsToExport | ForEach-Object { @{ Name = $_ } })
    $script:Examples = foreach ($c in $Cmdlets) {
        $i = 0
        foreach ($e in @((Get-Help $c.Name -Full).examples.example)) {
            $i++
            @{ Cmdlet = $c.Name; Index = $i; Title = ($e.title -replace '^-+\s*|\s*-+$', ''); Code = $e.code }
        }
    }
    $script:ErrorIdNames = @([regex]::Matches((Get-Content -Raw (Join-Path $PSScriptRoot '../src/BastionTools/Diagnostics/ErrorIds.cs')),
            'public const string (\w+) =') | ForEach-Object { $_.Groups[1].Value })
}

BeforeAll {
    Import-Module (Join-Path $PSScriptRoot 'TestHelpers.psm1') -Force
    Import-Module (Get-TestModulePath) -Force
    $script:Common = [System.Management.Automation.PSCmdlet]::CommonParameters + [System.Management.Automation.PSCmdlet]::OptionalCommonParameters
}

Describe 'Get-Help <Name> -Full' -ForEach $Cmdlets {
    BeforeAll {
        $script:Help = Get-Help $Name -Full
        $script:Command = Get-Command $Name -Module BastionTools
    }

    It 'comes from the module''s MAML file, with a written synopsis' {
        $Command.HelpFile | Should -BeLike '*BastionTools.dll-Help.xml'
        Test-Path (Join-Path $Command.Module.ModuleBase 'en-US/BastionTools.dll-Help.xml') | Should -BeTrue
        $Help.Synopsis.Trim() | Should -Not -BeNullOrEmpty
        # Without help, PowerShell makes the synopsis out of the syntax ("Get-Foo [-Bar] <string> ...").
        $Help.Synopsis | Should -Not -Match "^\s*$([regex]::Escape($Name))(\s|$)"
        $Help.Synopsis | Should -Not -Match '<CommonParameters>'
        ($Help.description.Text -join '') | Should -Not -BeNullOrEmpty
    }

    It 'describes every parameter' {
        $params = @($Command.Parameters.Keys | Where-Object { $_ -notin $Common })
        $params | Should -Not -BeNullOrEmpty
        foreach ($p in $params) {
            $text = (Get-Help $Name -Parameter $p).description.Text -join ''
            $text | Should -Not -BeNullOrEmpty -Because "-$p of $Name needs a description"
        }
    }

    It 'has at least two examples with code and an explanation, and outputs' {
        $examples = @($Help.examples.example)
        $examples.Count | Should -BeGreaterOrEqual 2
        foreach ($e in $examples) {
            $e.code | Should -Not -BeNullOrEmpty
            ($e.remarks.Text -join '') | Should -Not -BeNullOrEmpty
        }
        @($Help.returnValues.returnValue).Count | Should -BeGreaterOrEqual 1
    }

    It 'shows the syntax of every parameter set' {
        @($Help.syntax.syntaxItem).Count | Should -Be @($Command.ParameterSets).Count
    }
}

Describe 'about_BastionTools' {
    BeforeAll {
        $script:About = Get-Help about_BastionTools | Out-String
    }

    It 'is shown by Get-Help after Import-Module' {
        $About | Should -Match 'about_BastionTools'
        foreach ($heading in 'ARCHITECTURE', 'CREDENTIALS', 'SECURITY MODEL', 'TROUBLESHOOTING', 'ERROR IDS') {
            $About | Should -Match $heading
        }
        foreach ($topic in 'Plugin-free', 'Idle timeouts', 'Hourly reconnects', 'TLS through the tunnel', 'password login stops after rds_iam', 'Basic vs multiplexed') {
            $About | Should -Match ([regex]::Escape($topic))
        }
    }

    It 'documents ErrorId <_> with its cause and fix' -ForEach $ErrorIdNames {
        $About | Should -Match "(?m)^\s+$_\s*\r?\n\s+Cause: .+\r?\n(?:.*\r?\n)*?\s+Fix: "
    }
}

Describe 'Every example runs against the sandbox' {
    BeforeAll {
        $script:Sandbox = Start-TestSandbox -ExtraArguments @('--rds')
        $script:Pg = $Sandbox.postgres
        $script:Rds = $Sandbox.rds
        # The examples are written for this world.
        $Rds.endpoint | Should -Be 'demo.c0ffee123456.us-west-2.rds.amazonaws.com'
        $Pg.database | Should -Be 'appdb'

        $psi = [System.Diagnostics.ProcessStartInfo]::new('psql')
        foreach ($a in '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-h', '127.0.0.1', '-p', "$($Pg.port)", '-U', $Pg.user, '-d', $Pg.database, '-c',
            'CREATE ROLE app_reader LOGIN; GRANT rds_iam TO app_reader; GRANT SELECT ON seed_items TO app_reader;') { $psi.ArgumentList.Add($a) }
        $psi.Environment['PGPASSWORD'] = $Pg.password
        $psi.RedirectStandardOutput = $true; $psi.RedirectStandardError = $true
        $p = [System.Diagnostics.Process]::Start($psi); $out = $p.StandardOutput.ReadToEnd() + $p.StandardError.ReadToEnd(); $p.WaitForExit()
        if ($p.ExitCode) { throw "psql failed: $out" }

        # What a user's session would already have: credentials, region and (here) the sandbox's endpoints and CA.
        $script:Defaults = @{
            '*:AccessKey'          = $Sandbox.Aws.AccessKey
            '*:SecretKey'          = $Sandbox.Aws.SecretKey
            '*:Region'             = $Sandbox.Aws.Region
            '*:EndpointUrl'        = $Sandbox.Aws.EndpointUrl
            '*:SslRootCertificate' = $Rds.caBundle
        }
        $script:MasterCredential = [pscredential]::new($Pg.user, (ConvertTo-SecureString $Pg.password -AsPlainText -Force))
    }

    AfterAll {
        Get-BastionSession | Stop-BastionSession -ErrorAction SilentlyContinue
        if ($Sandbox) { Stop-TestSandbox $Sandbox }
    }

    It '<Cmdlet> example <Index>: <Title>' -ForEach $Examples {
        $PSDefaultParameterValues = $Defaults.Clone()
        $master = $MasterCredential
        $ErrorActionPreference = 'Stop'
        $sb = [scriptblock]::Create($Code)
        try {
            $output = & $sb 6>&1 | Out-String
        }
        finally {
            Get-BastionSession | Stop-BastionSession -ErrorAction SilentlyContinue
        }
        $output | Should -Not -Match ([regex]::Escape($Sandbox.Aws.SecretKey))
    }
}
